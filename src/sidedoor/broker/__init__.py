"""The broker: rendezvous, relay, mailbox and invite meeting point for sidedoor nodes."""
