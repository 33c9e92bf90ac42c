"""Domains, accounts, mailboxes, credentials, ACL rights, alerts: pure data rules, no sockets."""
