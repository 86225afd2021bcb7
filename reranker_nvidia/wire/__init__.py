"""HTTP/1.1 on the wire, parsed in C by httptools: the server the HTTP contracts are served
by, and the client NIM is called with. Nothing here knows a contract or a NIM."""
