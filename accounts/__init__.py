"""Names, credentials and ACL rights: the pure data rules about accounts (no sockets, no store).

`names` validates and canonicalises domain, account and mailbox names; `credentials` derives and
checks the stored SCRAM-SHA-256 keys of a password; `acl` parses ACL entries and computes the
rights they give (Cyrus semantics, RFC 4314).
"""
