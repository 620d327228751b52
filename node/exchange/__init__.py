"""The node side of the regional exchange (see node/exchange/README.md)."""
