#!/usr/bin/env python3
# Tiny TCP server for the lab's backend pod: answers "<tag>\n" to every connection.
# usage: tcpsrv.py PORT TAG
import socket
import sys

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    try:
        c.sendall((sys.argv[2] + "\n").encode())
    finally:
        c.close()
