-- Chat: conversations, messages (with full-text search), rooms, the outbox, receipts.
-- Times are milliseconds since the epoch (integers), as on the wire.

-- One row per conversation this node takes part in: a contact (id = its 32-byte key)
-- or a room (id = the 16-byte room id). next_seq: our next sequence number in it.
CREATE TABLE chat_conversations (
    id         BLOB PRIMARY KEY CHECK (length(id) IN (16, 32)),
    kind       TEXT NOT NULL CHECK (kind IN ('direct', 'room')),
    next_seq   INTEGER NOT NULL DEFAULT 1,
    newest_at  INTEGER NOT NULL DEFAULT 0     -- the highest order_at seen (hybrid clock)
) STRICT;

-- Every message, sent or received. order_at is the display order (see proto/chat.py);
-- state: ours pending | mailed | sent | delivered | read | failed; theirs unread | read.
-- Our direct messages that are pending or mailed are the direct part of the outbox.
CREATE TABLE chat_messages (
    rowid        INTEGER PRIMARY KEY,
    id           BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
    conversation BLOB NOT NULL,
    sender       BLOB NOT NULL CHECK (length(sender) = 32),
    seq          INTEGER NOT NULL,
    sent_at      INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    order_at     INTEGER NOT NULL,
    text         TEXT NOT NULL,
    reply_to     BLOB,
    attachments  BLOB,                        -- msgpack list of file-offer references
    signature    BLOB,                        -- room messages: the sender's signature
    mine         INTEGER NOT NULL CHECK (mine IN (0, 1)),
    state        TEXT NOT NULL,
    error        TEXT
) STRICT;
CREATE INDEX chat_messages_order ON chat_messages (conversation, order_at, sender, seq);
CREATE INDEX chat_messages_sender ON chat_messages (conversation, sender, seq, order_at);
CREATE INDEX chat_messages_unread ON chat_messages (conversation, state) WHERE mine = 0;
CREATE INDEX chat_messages_pending ON chat_messages (conversation, seq)
    WHERE mine = 1 AND state IN ('pending', 'mailed');

-- Full-text search. Messages are indexed in bulk a moment after they are stored (and
-- before any search), not by a trigger: a trigger costs several times more per message,
-- on the path every message takes. indexed_rowid: the last message indexed.
CREATE VIRTUAL TABLE chat_search USING fts5 (
    text, content = 'chat_messages', content_rowid = 'rowid', tokenize = 'unicode61',
    columnsize = 0
);
CREATE TABLE chat_search_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_rowid INTEGER NOT NULL
) STRICT;
INSERT INTO chat_search_state VALUES (1, 0);

-- Rooms this node knows, at the last version of their membership it applied.
-- status: active (we are a member), left (we left), removed (an admin removed us).
CREATE TABLE chat_rooms (
    id         BLOB PRIMARY KEY CHECK (length(id) = 16),
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'left', 'removed')),
    created_at REAL NOT NULL
) STRICT;

CREATE TABLE chat_room_members (
    room   BLOB NOT NULL REFERENCES chat_rooms (id) ON DELETE CASCADE,
    member BLOB NOT NULL CHECK (length(member) = 32),
    admin  INTEGER NOT NULL CHECK (admin IN (0, 1)),
    PRIMARY KEY (room, member)
) STRICT;

-- The signed membership chain, kept to pass on to members who missed part of it.
CREATE TABLE chat_room_updates (
    room    BLOB NOT NULL REFERENCES chat_rooms (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    frame   BLOB NOT NULL,
    PRIMARY KEY (room, version)
) STRICT;

-- What else waits to be handed to a peer: encoded request frames (room messages,
-- receipts, room updates; direct messages wait in chat_messages). A row goes when the peer acknowledges it; mailed = 1 once a broker's mailbox
-- also holds it (whichever arrives first wins; the receiver deduplicates).
CREATE TABLE chat_outbox (
    peer       BLOB NOT NULL CHECK (length(peer) = 32),
    ref        BLOB NOT NULL,
    room       BLOB,                          -- a room's frames go when the peer leaves it
    frame      BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    mailed     INTEGER NOT NULL DEFAULT 0 CHECK (mailed IN (0, 1)),
    PRIMARY KEY (peer, ref)
) STRICT;

-- Per recipient of our messages in rooms: delivered / read (direct messages keep it in
-- chat_messages.state).
CREATE TABLE chat_receipts (
    message BLOB NOT NULL,
    member  BLOB NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('delivered', 'read')),
    at      INTEGER NOT NULL,
    PRIMARY KEY (message, member)
) STRICT;
