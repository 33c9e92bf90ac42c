"""XTND XMIT: mail submission over a POP3 session (issue 5).

The engine reads the submitted body (cgpop/pop3/body.py); the pieces here take it from there:
`submit` accepts a submission (delivering local copies, queueing the rest) or refuses it with a
`SubmissionError`, `envelope` checks the message and derives sender/recipients, `ratelimit`
judges the per-account limit, `worker` relays the queue (`mx` finds the hosts for a domain,
`relay` speaks SMTP to one host, `dsn` writes bounces, `retry` says when to try again), and
`service` wires them into the gateway. Only the composition root (cgpop.server) and the CLI
import this package.
"""
