"""Services built on sessions: contacts, invites, and (later) chat and files."""
