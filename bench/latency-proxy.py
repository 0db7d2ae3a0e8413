#!/usr/bin/env python3
"""An ssh ProxyCommand that delays every byte by DELAY seconds each way, for
measuring on loopback what a distant host costs (there is no netem here):

    ProxyCommand python3 bench/latency-proxy.py %p 0.02    # 40 ms round trips

in one host's block of a lab's ssh_config (waymark-deploy-bench --hold prints it), or
for every host through waymark-deploy-bench --ssh-option. Connects to 127.0.0.1:PORT.
"""
import asyncio
import os
import sys


async def pump(read, write, drain, delay):
    """Copies chunks from read to write, each DELAY seconds after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def sender():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                return
            write(data)
            await drain()

    task = asyncio.create_task(sender())
    while data := await read():
        queue.put_nowait((loop.time() + delay, data))
    queue.put_nowait((loop.time() + delay, None))
    await task


async def main(port, delay):
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    stdout = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)

    async def flushed():
        pass

    await asyncio.gather(
        pump(lambda: stdin.read(65536), writer.write, writer.drain, delay),
        pump(lambda: reader.read(65536), stdout.write, flushed, delay),
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: latency-proxy.py PORT DELAY_SECONDS")
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
