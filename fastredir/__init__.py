"""fastredir: a stateless IKEv2 redirector (RFC 5685).

It answers IKE_SA_INIT requests with a REDIRECT to one gateway of a pool,
before any IKE state exists.
"""

__version__ = "0.1.0"
