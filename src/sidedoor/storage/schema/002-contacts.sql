-- People this node accepted. Only contacts may open sessions beyond the
-- handshake; a blocked contact is refused at the handshake.
CREATE TABLE contacts (
    identity  BLOB PRIMARY KEY CHECK (length(identity) = 32),
    petname   TEXT NOT NULL,
    card      BLOB NOT NULL,            -- their latest SignedCard
    source    TEXT NOT NULL,            -- how they were added: invite, request, link
    added_at  REAL NOT NULL,
    verified  INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    blocked   INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    last_seen REAL
) STRICT;

-- Contact requests: received from strangers (in), or sent by us and not yet
-- answered (out). One per identity and direction.
CREATE TABLE contact_requests (
    id          INTEGER PRIMARY KEY,
    identity    BLOB NOT NULL CHECK (length(identity) = 32),
    direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    card        BLOB NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    via         TEXT NOT NULL,          -- nearby, link
    received_at REAL NOT NULL,
    UNIQUE (identity, direction)
) STRICT;

-- One-time tokens carried by links: a request that presents one is accepted at once.
CREATE TABLE link_tokens (
    token      BLOB PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
) STRICT;
