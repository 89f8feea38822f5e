"""The fault suite: a broken upstream, and clients that leave, at every phase of a request."""
