#!/usr/bin/python3
"""Hold N simple binds pending: open N connections, send one simple BindRequest on
each (distinct users), and do not wait for the answers before reporting "sent".

    hold-binds.py --port P --users bench0001..bench0100 [--host 127.0.0.1]
                  [--base ou=People,dc=example,dc=com] [--password-suffix -pampw]
                  [--status FILE] [--wait SECONDS]

User NAME binds as uid=NAME,<base> with password NAME<password-suffix>. After every
bind is sent, the client waits (at most --wait seconds) for the answers and keeps
--status up to date with one line:

    sent=<n> answered=<n> codes=<code>:<count>,... first=<s> last=<s> closed=<n>

(first/last: seconds from the moment all binds were sent to the first/last answer).
It exits 0 when every bind was answered with success (0), 1 otherwise, and closes
everything on SIGTERM/SIGINT. Standard library only (Debian's /usr/bin/python3).
"""

import argparse
import os
import selectors
import signal
import socket
import sys
import time


def ber_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag, value):
    return bytes([tag]) + ber_len(len(value)) + value


def ber_int(tag, n):
    return tlv(tag, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True))


def bind_request(msgid, dn, password):
    """LDAPMessage { messageID, [APPLICATION 0] BindRequest { 3, name, simple [0] } }."""
    bind = ber_int(0x02, 3) + tlv(0x04, dn.encode()) + tlv(0x80, password.encode())
    return tlv(0x30, ber_int(0x02, msgid) + tlv(0x60, bind))


def read_tlv(buf, pos):
    """(tag, value_start, value_end) of the TLV at pos, or None if incomplete."""
    if pos + 2 > len(buf):
        return None
    tag, first = buf[pos], buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        k = first & 0x7F
        if pos + k > len(buf):
            return None
        length = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    if pos + length > len(buf):
        return None
    return tag, pos, pos + length


def bind_result_code(message):
    """resultCode of a BindResponse LDAPMessage (bytes of the whole message)."""
    try:
        _, start, _ = read_tlv(message, 0)            # LDAPMessage SEQUENCE
        _, _, after_id = read_tlv(message, start)     # messageID
        tag, op, _ = read_tlv(message, after_id)      # protocolOp
        # 0x61 BindResponse; 0x78 ExtendedResponse (a Notice of Disconnection): both
        # start with an LDAPResult, whose first element is the resultCode ENUMERATED.
        if tag not in (0x61, 0x78):
            return "op%02x" % tag
        _, cs, ce = read_tlv(message, op)
        return str(int.from_bytes(message[cs:ce], "big"))
    except (TypeError, IndexError):
        return "malformed"


def parse_users(spec):
    """'bench0001..bench0100' or a comma-separated list."""
    if ".." in spec:
        a, b = spec.split("..", 1)
        prefix = a.rstrip("0123456789")
        lo, hi = int(a[len(prefix):]), int(b[len(prefix):])
        width = len(a) - len(prefix)
        return ["%s%0*d" % (prefix, width, i) for i in range(lo, hi + 1)]
    return [u for u in spec.split(",") if u]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--users", required=True)
    ap.add_argument("--base", default="ou=People,dc=example,dc=com")
    ap.add_argument("--password-suffix", default="-pampw")
    ap.add_argument("--status", help="file rewritten with one status line")
    ap.add_argument("--wait", type=float, default=120.0, help="seconds to wait for answers")
    args = ap.parse_args()

    users = parse_users(args.users)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))

    sel = selectors.DefaultSelector()
    conns = {}
    for i, user in enumerate(users):
        s = socket.create_connection((args.host, args.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(bind_request(1, "uid=%s,%s" % (user, args.base), user + args.password_suffix))
        s.setblocking(False)
        conns[s] = {"user": user, "buf": b""}
        sel.register(s, selectors.EVENT_READ)
        if stop:
            break
    t_sent = time.monotonic()
    codes = {}
    answered = closed = 0
    first = last = None

    def write_status(final=False):
        line = "sent=%d answered=%d codes=%s first=%s last=%s closed=%d%s\n" % (
            len(conns), answered,
            ",".join("%s:%d" % kv for kv in sorted(codes.items())) or "-",
            "-" if first is None else "%.2f" % first,
            "-" if last is None else "%.2f" % last,
            closed, " done" if final else "")
        if args.status:
            tmp = args.status + ".tmp"
            with open(tmp, "w") as f:
                f.write(line)
            os.replace(tmp, args.status)
        return line

    write_status()
    pending = set(conns)
    deadline = t_sent + args.wait
    while pending and not stop and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            st = conns[s]
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                if s in pending:
                    closed += 1
                    pending.discard(s)
                sel.unregister(s)
                continue
            st["buf"] += data
            t = read_tlv(st["buf"], 0)
            if t is None or s not in pending:
                continue
            code = bind_result_code(st["buf"][:t[2]])
            codes[code] = codes.get(code, 0) + 1
            answered += 1
            now = time.monotonic() - t_sent
            first = now if first is None else first
            last = now
            pending.discard(s)
            sel.unregister(s)
            write_status()
    line = write_status(final=True)
    for s in conns:
        try:
            s.close()
        except OSError:
            pass
    sys.stdout.write(line)
    ok = answered == len(users) and set(codes) == {"0"}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
