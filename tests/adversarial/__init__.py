"""Tests written by an independent adversarial review (see FINDINGS.md): each reproduced a
finding and now asserts the fix, or records an attack that held."""
