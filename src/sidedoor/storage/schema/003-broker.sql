-- The brokers this node registers with (sidedoor-broker://HOST:PORT/KEY), in the
-- order the user added them; its contact card names them.
CREATE TABLE brokers (
    url      TEXT PRIMARY KEY,
    added_at REAL NOT NULL
) STRICT;
