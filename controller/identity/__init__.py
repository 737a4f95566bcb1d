"""Identity authentication: a token as the password, mapped to a role by `spec.access.identities`.

Without I/O: `tokens` (what a token proves, given a JWKS or a TokenReview's answer, and the time) and
`cache` (tokens already verified, by hash, until they expire). With asyncio: `authenticate` (the
one credential check, asking a TokenReview where it must) and `endpoint`, the Postgres-wire door
that terminates TLS, takes the token as a cleartext password, and connects to Postgres as the role
with the operator CA's client certificate.
"""
