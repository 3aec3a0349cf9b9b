'use strict';
// A real LwM2M client (FIWARE lwm2m-node-lib 1.4.0, unmodified) driven line by line from
// stdin by tests/integration/test_lwm2m.py; it reports what happens as JSON lines on stdout.
//
//   node client.js HOST PORT ENDPOINT LIFETIME_S
//   stdin:  register | set OBJ/INST RES VALUE | binding U|UQ | update | deregister | quit
//   stdout: {"event": "ready"}, {"event": "registered", "location": "/rd/…"},
//           {"event": "written", "path": "/3311/0/5851", "value": "40"}, {"event": "error", …}
//
// lwm2m-node-lib hard-codes b=U in the query of Register and Update; queue mode is asked for by
// rewriting that parameter in the requests the library hands to node-coap's Agent (the one
// workaround here; the library's code is not touched). Node 20 runs the library as it is.

const readline = require('readline');
const coap = require('coap');

const [host, port, endpoint, lifetime] = process.argv.slice(2);
let binding = 'U';
const agentRequest = coap.Agent.prototype.request;
coap.Agent.prototype.request = function request(opts) {
    if (opts && typeof opts.query === 'string') {
        opts.query = opts.query.replace(/(^|&)b=U(&|$)/, `$1b=${binding}$2`);
    }
    return agentRequest.call(this, opts);
};

const lwm2m = require('lwm2m-node-lib');
const client = lwm2m.client;
let device = null;

function say(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function done(what) {
    return (error, result) => {
        if (error) {
            say({ event: 'error', what, error: String(error.name || error.message || error) });
        } else {
            say({ event: what, location: result && result.location });
        }
    };
}

client.init({
    client: {
        lifetime: lifetime || '300',
        version: '1.1',
        logLevel: 'FATAL',
        observe: { period: 3000 },
        ipProtocol: 'udp4',
        serverProtocol: 'udp4',
        formats: [{ name: 'lightweightm2m/text', value: 1541 }],
        writeFormat: 'lightweightm2m/text',
    },
});
require('logops').setLevel('FATAL');

// the library resets its handlers on every Register and Update: set them again each time
function handlers(info) {
    client.setHandler(info.serverInfo, 'write', (objectType, objectId, resourceId, value, callback) => {
        say({ event: 'written', path: `/${objectType}/${objectId}/${resourceId}`, value: String(value) });
        callback(null);
    });
    client.setHandler(info.serverInfo, 'execute', (objectType, objectId, resourceId, args, callback) => {
        say({ event: 'executed', path: `/${objectType}/${objectId}/${resourceId}` });
        callback(null);
    });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
    const [cmd, ...args] = line.trim().split(/\s+/);
    if (cmd === 'create') {
        client.registry.create(args[0], done('created'));
    } else if (cmd === 'set') {
        client.registry.setResource(args[0], args[1], args[2], done('set'));
    } else if (cmd === 'binding') {
        binding = args[0];
        say({ event: 'binding', binding });
    } else if (cmd === 'register') {
        client.register(host, Number(port), null, endpoint, (error, info) => {
            if (error) {
                say({ event: 'error', what: 'register', error: String(error.name || error), message: String(error.message) });
            } else {
                device = info;
                handlers(info);
                say({ event: 'registered', location: info.location });
            }
        });
    } else if (cmd === 'update') {
        client.update(device, (error, info) => {
            if (error) {
                say({ event: 'error', what: 'update', error: String(error.name || error), message: String(error.message) });
            } else {
                device = info;
                handlers(info);
                say({ event: 'updated', location: info.location });
            }
        });
    } else if (cmd === 'deregister') {
        client.unregister(device, done('deregistered'));
    } else if (cmd === 'quit') {
        process.exit(0);
    }
});
say({ event: 'ready' });
