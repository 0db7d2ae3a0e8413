#!/usr/bin/env python3
"""An ssh ProxyCommand that delays every byte by DELAY seconds each way, for
measuring on loopback what a distant host costs (there is no netem here):

    ProxyCommand python3 bench/latency-proxy.py %p 0.02    # 40 ms round trips

in one host's block of a lab's ssh_config (waymark-deploy-bench --hold prints it), or
for every host through waymark-deploy-bench --ssh-option. Connects to 127.0.0.1:PORT.

    --name %n --log FILE   appends one JSON line per chunk to FILE (connection, host,
                           time, direction, bytes), to count a deploy's round trips
                           (bench/latency-turns.py reads it);
    --near NAME            no delay to host NAME (a build host beside the deployer),
                           still relayed and logged, so every connection costs alike.

Only the delay is simulated: no bandwidth limit, no loss.
"""
import argparse
import asyncio
import json
import os
import signal
import sys
import time


class Log:
    """One JSON line per event, each written whole by one O_APPEND write: the proxies of
    a deploy's connections share the file."""

    def __init__(self, path, name, port):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None
        self.conn = f"{os.getpid()}-{time.time_ns()}"
        self.name = name
        self.port = port

    def __call__(self, event, nbytes=0, **extra):
        if self.fd is None:
            return
        line = {"c": self.conn, "h": self.name, "p": self.port, "t": time.time(), "e": event}
        if nbytes:
            line["n"] = nbytes
        line.update(extra)
        os.write(self.fd, (json.dumps(line) + "\n").encode())


async def pump(read, write, drain, end, delay, log, direction):
    """Copies chunks from read to write, each DELAY seconds after it arrived, in order;
    then ends the other side's direction (a half-close), DELAY after the end arrived."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def sender():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                end()
                return
            write(data)
            await drain()

    task = asyncio.create_task(sender())
    while data := await read():
        log(direction, len(data))
        queue.put_nowait((loop.time() + delay, data))
    log(direction + "eof")
    queue.put_nowait((loop.time() + delay, None))
    await task


async def main(args):
    log = Log(args.log, args.name, args.port)
    delay = 0.0 if args.name is not None and args.name in args.near else args.delay
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    except OSError as e:
        sys.exit(f"latency-proxy: cannot connect to 127.0.0.1:{args.port}: {e.strerror}")
    log("open", delay=delay)
    # ssh ends its ProxyCommand with SIGHUP when it exits (a master told to stop, say),
    # often before it closes the pipes: the log says when.
    loop.add_signal_handler(signal.SIGHUP, lambda: (log("hup"), os._exit(0)))
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    stdout = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)

    async def flushed():
        pass

    # ">": from ssh to the host, "<": back. Each end is passed on, so that sshd sees
    # the client leave (and ends the connection) as soon as ssh does.
    try:
        await asyncio.gather(
            pump(lambda: stdin.read(65536), writer.write, writer.drain, writer.write_eof,
                 delay, log, ">"),
            pump(lambda: reader.read(65536), stdout.write, flushed, stdout.close,
                 delay, log, "<"),
        )
    except (BrokenPipeError, ConnectionResetError):
        pass
    log("close")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int, metavar="PORT")
    parser.add_argument("delay", type=float, metavar="DELAY_SECONDS", help="each way")
    parser.add_argument("--name", help="the host's name, for the log and --near (ssh's %%n)")
    parser.add_argument("--log", help="a file to append one JSON line per chunk to")
    parser.add_argument("--near", action="append", default=[], metavar="NAME",
                        help="no delay to this host (repeatable)")
    asyncio.run(main(parser.parse_args()))
