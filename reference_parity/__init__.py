"""Parity harness: golden fixtures recorded from the original PercePiano code and the comparisons against them.

Recorded side (what ``percepiano parity`` and ``pytest -m parity`` need; no original checkout):

* :mod:`reference_parity.recorded` reads the fixtures in ``reference_parity/fixtures/`` and checks them against
  their ``MANIFEST.json``;
* :mod:`reference_parity.tolerances` holds the tolerances, each justified;
* :mod:`reference_parity.compare` compares our implementation with the fixtures.

Live side (needs the original checkout named by ``PERCEPIANO_UPSTREAM``; imports the recorded side, never the
reverse):

* :mod:`reference_parity.upstream` imports the original modules in isolation;
* :mod:`reference_parity.capture` records the fixtures (``python -m reference_parity.capture``).

:mod:`reference_parity.inputs` holds the fixture batch's segments and the original's per-sample layout (both sides; batches come from :mod:`percepiano.synthetic`).
"""
