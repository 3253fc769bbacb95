-- File transfers, both directions. A transfer is offered by one side and pulled
-- chunk by chunk by the other; what each side must remember to resume after a
-- restart lives here.
CREATE TABLE transfers (
    id             BLOB PRIMARY KEY CHECK (length(id) = 16),
    direction      TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    peer           BLOB NOT NULL CHECK (length(peer) = 32),
    -- out: queued, offered, sending, done, declined, cancelled, failed
    -- in:  offered, receiving, done, declined, cancelled, failed
    status         TEXT NOT NULL,
    note           TEXT NOT NULL DEFAULT '',
    manifest       BLOB NOT NULL,          -- the Manifest, msgpack as on the wire
    total_bytes    INTEGER NOT NULL,
    file_count     INTEGER NOT NULL,
    sources        TEXT,                   -- out: JSON list, the local path of each file
    dest           TEXT,                   -- in: the folder the files go into
    roots          TEXT,                   -- in: JSON {offered top name: name used}
    bytes_sent     INTEGER NOT NULL DEFAULT 0,  -- out: chunk bytes sent, resends included
    bytes_received INTEGER NOT NULL DEFAULT 0,  -- in: chunk bytes received, discarded ones included
    verified_bytes INTEGER NOT NULL DEFAULT 0,  -- in: bytes verified; out: as last reported
    error          TEXT NOT NULL DEFAULT '',
    notice         TEXT NOT NULL DEFAULT '',    -- declined/cancelled/done, not yet told to the peer
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
) STRICT;

CREATE INDEX transfers_by_status ON transfers(status);

-- Receiver: chunks verified and written into the partial file (resume asks for the rest).
CREATE TABLE transfer_chunks (
    transfer BLOB NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    file     INTEGER NOT NULL,
    chunk    INTEGER NOT NULL,
    PRIMARY KEY (transfer, file, chunk)
) STRICT, WITHOUT ROWID;

-- Receiver: files verified and renamed into place, with the path they got.
CREATE TABLE transfer_files (
    transfer   BLOB NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    file       INTEGER NOT NULL,
    final_path TEXT NOT NULL,
    PRIMARY KEY (transfer, file)
) STRICT, WITHOUT ROWID;

-- Sender: chunk hashes of local files, so offering the same file again is instant.
CREATE TABLE file_hashes (
    path     TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hashes   BLOB NOT NULL
) STRICT;
