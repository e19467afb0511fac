"""Identities, canonical encodings, hashes and signatures.

Everything here is deterministic given its inputs; keys are read and written only by
`identity.load_or_create`, which keeps private keys at file mode 0600.
"""
