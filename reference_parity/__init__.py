"""Parity harness: golden fixtures recorded from the original PercePiano code and the comparisons against them.

* :mod:`reference_parity.upstream` imports the original modules (from ``PERCEPIANO_UPSTREAM``) in isolation.
* :mod:`reference_parity.capture` records the fixtures in ``reference_parity/fixtures/`` (needs the original).
* :mod:`reference_parity.compare` loads the fixtures and compares our implementation with them (no original needed).
* :mod:`reference_parity.batches` builds the synthetic padded batches both implementations are fed.
"""
