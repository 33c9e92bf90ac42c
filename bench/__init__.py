"""Side-by-side POP3 benchmark of cgpop against Dovecot (issue 6); run with `python -m bench`.

Not part of the cgpop package and never imported by the test suite.
"""
