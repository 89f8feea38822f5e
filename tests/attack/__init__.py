"""The attack suite: hostile clients against the real gateway, each case asserting the exact outcome."""
