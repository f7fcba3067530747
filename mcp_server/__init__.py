"""The MCP server exposing lens as tools; filled in by the MCP server issue."""
