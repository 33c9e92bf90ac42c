"""XTND XMIT: mail submission over a POP3 session (issue 5).

The pieces here are sans-IO or self-contained so the POP3 engine and the queue can wire them in:
`body` reads the submitted lines, `envelope` checks the message and derives sender/recipients,
`mx` finds the hosts for a domain, `relay` speaks SMTP to one host, `dsn` writes bounces,
`retry` says when to try again.
"""
