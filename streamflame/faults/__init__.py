"""Fault injection and hostile-input runs on the real stack (`streamflame chaos`, `streamflame fuzz`):
beside the runtime layers, which never import them."""
