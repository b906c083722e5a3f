//! MCP (Model Context Protocol) client side: tool discovery against the
//! servers users configure.
