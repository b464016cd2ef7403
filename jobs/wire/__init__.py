"""Wire schemas: batch lines, request and response bodies, the public objects, line checks."""
