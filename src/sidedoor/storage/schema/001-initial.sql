-- Settings the user changes (display name, port, ...), as text.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Peers this node has completed a handshake with. The Noise static key lets the
-- next dial use the one-round-trip IK handshake.
CREATE TABLE peers (
    identity     BLOB PRIMARY KEY CHECK (length(identity) = 32),
    noise_static BLOB NOT NULL CHECK (length(noise_static) = 32),
    last_addr    TEXT,
    last_seen    REAL NOT NULL
) STRICT;
