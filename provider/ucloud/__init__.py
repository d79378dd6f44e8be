"""Everything about UCloud/Core: wire models, inbound JWT checks, and the client for Core's control API."""
