"""Declarations of the telemetry tables decoders produce (each declared once, here)."""

from __future__ import annotations

from decoders.base import Column, ColumnType, HourlyRollup, TableSpec

T = ColumnType

ENV_READINGS = TableSpec(
    name="env_readings",
    description="Environmental readings: one numeric value per device, metric and time.",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="measurement time (UTC)"),
        Column("device_id", T.INT4, description="internal device id (devices.id)"),
        Column("metric", T.TEXT, description="metric name, e.g. temperature, pm2_5"),
        Column("value", T.FLOAT8, description="value in the metric's unit (decoders/README.md)"),
    ),
    natural_key=("device_id", "metric", "time"),
    chunk_interval="1 day",
    compress_after="7 days",
    retain_for="730 days",
    hourly=HourlyRollup(group_by=("device_id", "metric"), values=("value",)),
)

HJ212_READINGS = TableSpec(
    name="hj212_readings",
    description="HJ 212 monitoring data: one value per station, factor, field and time.",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="DataTime converted from UTC+8 to UTC"),
        Column("device_id", T.INT4, description="internal device id of the station (MN)"),
        Column(
            "cn", T.INT2, description="command: 2011 real-time, 2051 minute, 2061 hour, 2031 day"
        ),
        Column("factor", T.TEXT, description="factor code, 2017 edition (2005 codes mapped)"),
        Column("code", T.TEXT, description="factor code as the station sent it"),
        Column("field", T.TEXT, description="Rtd, Avg, Min, Max, Cou, ZsRtd, ZsAvg…"),
        Column("value", T.FLOAT8, description="value in the factor's unit"),
        Column("flag", T.TEXT, nullable=True, description="data flag: N, F, M, S, D, C, T, B"),
    ),
    natural_key=("device_id", "cn", "factor", "field", "time"),
    hourly=HourlyRollup(group_by=("device_id", "cn", "factor", "field"), values=("value",)),
)

DEVICE_STATUS = TableSpec(
    name="device_status",
    description="Device-reported status values (HJ 212 equipment status 2021, alarms 2072…).",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="time the device gives for the status"),
        Column("device_id", T.INT4, description="internal device id"),
        Column("key", T.TEXT, description="status key as the device sends it, e.g. SB1-RS"),
        Column("value", T.FLOAT8, description="numeric status value"),
    ),
    natural_key=("device_id", "key", "time"),
)

STREETLIGHT_STATUS = TableSpec(
    name="streetlight_status",
    description="Smart streetlight controller reports: electrical values, dimming, lamp state.",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="report time (UTC)"),
        Column("device_id", T.INT4, description="internal device id of the controller"),
        Column("voltage_v", T.FLOAT4, nullable=True, description="lamp supply voltage, V"),
        Column("current_a", T.FLOAT4, nullable=True, description="lamp current, A"),
        Column("power_w", T.FLOAT4, nullable=True, description="active power, W"),
        Column("energy_kwh", T.FLOAT8, nullable=True, description="energy meter, kWh"),
        Column("dimming_pct", T.INT2, nullable=True, description="dimming level, 0-100 %"),
        Column("lamp_on", T.BOOL, description="lamp switched on"),
        Column("faults", T.INT4, description="fault bits (decoders/README.md, streetlight)"),
        Column("temperature_c", T.INT2, nullable=True, description="controller temperature, °C"),
    ),
    natural_key=("device_id", "time"),
    hourly=HourlyRollup(group_by=("device_id",), values=("power_w", "voltage_v")),
)

VEHICLE_POSITIONS = TableSpec(
    name="vehicle_positions",
    description="Vehicle positions (JT/T 808 location reports; GB/T 32960 location data).",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="fix time (UTC; devices send UTC+8)"),
        Column("device_id", T.INT4, description="internal device id of the terminal"),
        Column("lat", T.FLOAT8, description="latitude, degrees (south negative)"),
        Column("lon", T.FLOAT8, description="longitude, degrees (west negative)"),
        Column("altitude_m", T.INT4, nullable=True, description="altitude, m"),
        Column("speed_kmh", T.FLOAT4, nullable=True, description="speed, km/h"),
        Column("heading_deg", T.INT2, nullable=True, description="direction, 0-359°"),
        Column("alarm", T.INT8, description="alarm bits (JT/T 808 Table 24)"),
        Column("status", T.INT8, description="status bits (JT/T 808 Table 25)"),
        Column("mileage_km", T.FLOAT8, nullable=True, description="odometer, km (extra 0x01)"),
        Column("fuel_l", T.FLOAT4, nullable=True, description="fuel, L (extra 0x02)"),
        Column("signal", T.INT2, nullable=True, description="network signal (extra 0x30)"),
        Column("satellites", T.INT2, nullable=True, description="GNSS satellites (extra 0x31)"),
    ),
    natural_key=("device_id", "time"),
)

VEHICLE_TAG_READS = TableSpec(
    name="vehicle_tag_reads",
    description="Vehicle electronic tag reads at road gantries (LLRP reports, JSON events).",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="first seen (UTC)"),
        Column("device_id", T.INT4, description="internal device id of the reader"),
        Column("epc", T.TEXT, description="tag EPC / serial, upper-case hex"),
        Column("tid", T.TEXT, nullable=True, description="tag TID, upper-case hex"),
        Column("plate", T.TEXT, nullable=True, description="plate, when the reader decrypted it"),
        Column("antenna", T.INT2, nullable=True, description="antenna id"),
        Column("rssi_dbm", T.INT2, nullable=True, description="peak RSSI, dBm"),
        Column("last_seen", T.TIMESTAMPTZ, nullable=True, description="last seen (UTC)"),
        Column("read_count", T.INT4, nullable=True, description="times seen in the report"),
    ),
    natural_key=("device_id", "epc", "time"),
)

EV_STATUS = TableSpec(
    name="ev_status",
    description="New-energy vehicle real-time data (GB/T 32960.3-2016), one row per report.",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="data time (UTC; vehicles send UTC+8)"),
        Column("device_id", T.INT4, description="internal device id of the vehicle (VIN)"),
        Column("reissued", T.BOOL, description="sent again after a gap (command 0x03)"),
        Column("vehicle_state", T.INT2, nullable=True, description="1 started, 2 off, 3 other"),
        Column(
            "charging_state",
            T.INT2,
            nullable=True,
            description="1 parked charging, 2 driving charging, 3 not charging, 4 done",
        ),
        Column("mode", T.INT2, nullable=True, description="1 electric, 2 hybrid, 3 fuel"),
        Column("speed_kmh", T.FLOAT4, nullable=True, description="speed, km/h"),
        Column("odometer_km", T.FLOAT8, nullable=True, description="odometer, km"),
        Column("voltage_v", T.FLOAT4, nullable=True, description="total voltage, V"),
        Column("current_a", T.FLOAT4, nullable=True, description="total current, A"),
        Column("soc_pct", T.INT2, nullable=True, description="state of charge, %"),
        Column(
            "gear",
            T.INT2,
            nullable=True,
            description="gear byte (bits 0-3 gear, 4 brake force, 5 drive force)",
        ),
        Column("insulation_kohm", T.INT4, nullable=True, description="insulation resistance"),
        Column("max_alarm_level", T.INT2, nullable=True, description="highest alarm level 0-3"),
        Column("alarm_flags", T.INT8, nullable=True, description="general alarm bits"),
        Column("max_cell_v", T.FLOAT4, nullable=True, description="highest cell voltage, V"),
        Column("min_cell_v", T.FLOAT4, nullable=True, description="lowest cell voltage, V"),
        Column("max_temp_c", T.INT2, nullable=True, description="highest probe temperature"),
        Column("min_temp_c", T.INT2, nullable=True, description="lowest probe temperature"),
        Column("motor_count", T.INT2, nullable=True, description="drive motors reported"),
    ),
    natural_key=("device_id", "time"),
    hourly=HourlyRollup(group_by=("device_id",), values=("soc_pct", "speed_kmh")),
)

PARKING_READINGS = TableSpec(
    name="parking_readings",
    description="Parking-space sensor reports (geomagnetic NB-IoT frame), one row per frame.",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="report time (UTC)"),
        Column("device_id", T.INT4, description="internal device id of the space's sensor"),
        Column("seq", T.INT4, description="the sensor's frame counter (wraps at 65535)"),
        Column(
            "occupied", T.BOOL, nullable=True, description="vehicle detected (NULL: calibrating)"
        ),
        Column("flags", T.INT2, description="bit 0 heartbeat, 1 sensor fault, 2 low battery"),
        Column("mag_x_ut", T.FLOAT4, nullable=True, description="magnetic field x, µT"),
        Column("mag_y_ut", T.FLOAT4, nullable=True, description="magnetic field y, µT"),
        Column("mag_z_ut", T.FLOAT4, nullable=True, description="magnetic field z, µT"),
        Column("battery_mv", T.INT4, nullable=True, description="battery voltage, mV"),
        Column("temperature_c", T.INT2, nullable=True, description="sensor temperature, °C"),
    ),
    # two reports in the same second differ by their counter; a redelivery repeats both
    natural_key=("device_id", "time", "seq"),
)

PARKING_LOT_OCCUPANCY = TableSpec(
    name="parking_lot_occupancy",
    description=(
        "Occupied spaces per parking lot over time: a sample per lot and batch that reported "
        "on it, written by the occupancy stage (parking/), not by a decoder."
    ),
    columns=(
        Column("time", T.TIMESTAMPTZ, description="the latest report of the lot in the batch"),
        Column("lot", T.TEXT, description="lot id (parking_lots.lot, devices.lot)"),
        Column("occupied", T.INT4, description="spaces whose debounced state is occupied"),
        Column("capacity", T.INT4, description="the lot's capacity at that time"),
    ),
    natural_key=("lot", "time"),
    segment_by="lot",
    retain_for="730 days",
    hourly=HourlyRollup(group_by=("lot",), values=("occupied",)),
)

# Not stored: what the occupancy stage (parking/) hands the alert rules for each batch, one
# row per space the batch reported on (declared so that rules can name it and its columns).
PARKING_SPACE_STATUS = TableSpec(
    name="parking_space_status",
    description="Each reported space after the batch: debounced state, flaps, its lot's fill.",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="the space's latest report in the batch"),
        Column("device_id", T.INT4, description="internal device id of the space's sensor"),
        Column("lot", T.TEXT, description="the space's lot (devices.lot)"),
        Column("occupied", T.BOOL, description="the space's debounced state"),
        Column("unchanged_s", T.FLOAT8, description="seconds since the state last changed"),
        Column("flaps", T.INT4, description="suppressed flips in the current flap window"),
        Column(
            "lot_changes",
            T.INT4,
            description="other spaces of the lot whose state changed since this one's did",
        ),
        Column("lot_occupied", T.INT4, description="the lot's occupied spaces"),
        Column("lot_capacity", T.INT4, description="the lot's capacity"),
        Column("occupied_pct", T.FLOAT8, description="the lot's occupied share, %"),
    ),
    natural_key=("device_id", "time"),
)

ALL_TABLES = (
    ENV_READINGS,
    HJ212_READINGS,
    DEVICE_STATUS,
    STREETLIGHT_STATUS,
    VEHICLE_POSITIONS,
    VEHICLE_TAG_READS,
    EV_STATUS,
    PARKING_READINGS,
    PARKING_LOT_OCCUPANCY,
)

LWM2M_REGISTRATION_EVENTS = TableSpec(
    name="lwm2m_registration_events",
    description="LwM2M Register, Update and De-register operations (the history; "
    "lwm2m_registrations holds each device's current registration).",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="receive time (UTC)"),
        Column("device_id", T.INT4, description="internal device id of the endpoint"),
        Column("operation", T.TEXT, description="register, update or deregister"),
        Column("location", T.TEXT, description="the registration's location (/rd/<location>)"),
        Column("lifetime_s", T.INT4, nullable=True, description="lt: lifetime, s"),
        Column("binding", T.TEXT, nullable=True, description="b: U or UQ (queue mode)"),
        Column("lwm2m_version", T.TEXT, nullable=True, description="lwm2m: 1.0, 1.1…"),
        Column("object_links", T.TEXT, nullable=True, description="the CoRE link format payload"),
    ),
    natural_key=("device_id", "operation", "time"),
    compress_after="30 days",
    retain_for="365 days",
)
