#!/usr/bin/python3
"""Sequential simple binds on one connection; prints mean/p50/p95 round-trip time.
Usage: bind_rtt.py HOST PORT DN PASSWORD COUNT (standard library only)."""
import socket, struct, sys, time
def ber_len(n):
    if n < 128: return bytes([n])
    b = n.to_bytes((n.bit_length()+7)//8, 'big'); return bytes([0x80|len(b)]) + b
def tlv(tag, body): return bytes([tag]) + ber_len(len(body)) + body
def bind(msgid, dn, pw):
    op = tlv(0x60, tlv(0x02, b'\x03') + tlv(0x04, dn.encode()) + tlv(0x80, pw.encode()))
    return tlv(0x30, tlv(0x02, msgid.to_bytes(2,'big')) + op)
def recv_msg(s):
    hdr = s.recv(2)
    n = hdr[1]
    if n & 0x80:
        k = n & 0x7f; n = int.from_bytes(s.recv(k),'big')
    body=b''
    while len(body) < n: body += s.recv(n-len(body))
    return body
host, port, dn, pw, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
lat=[]
for i in range(count):
    t=time.perf_counter(); s.sendall(bind(i+1, dn, pw)); b=recv_msg(s); lat.append(time.perf_counter()-t)
    # messageID, then BindResponse [APPLICATION 1] { resultCode ENUMERATED, ... }
    op = b[2 + b[1]:]
    code = op[op.index(0x0a, 2) + 2]
    if code != 0:
        sys.exit(f"bind {i + 1} failed with result code {code}")
lat.sort()
print(f"binds={count} mean={sum(lat)/len(lat)*1e3:.2f}ms p50={lat[len(lat)//2]*1e3:.2f}ms p95={lat[int(len(lat)*.95)]*1e3:.2f}ms")
