// A loopback TCP relay that delays every chunk by `delayMs` in each
// direction, so the gaps of a remote browser (LIST answered, then REQUEST
// sent one round trip later) exist as they do in production.
import net from 'node:net';

export function startRelay(target, delayMs) {
  const relay = { target, delayMs, server: null, port: 0, conns: new Set() };
  function pipe(src, dst) {
    src.on('data', chunk => setTimeout(() => dst.writable && dst.write(chunk), relay.delayMs));
    src.on('end', () => setTimeout(() => dst.end(), relay.delayMs));
    src.on('error', () => setTimeout(() => dst.destroy(), relay.delayMs));
    src.on('close', () => setTimeout(() => dst.destroy(), relay.delayMs));
  }
  relay.server = net.createServer(client => {
    const upstream = net.connect(relay.target.port, relay.target.host);
    relay.conns.add(client);
    client.on('close', () => relay.conns.delete(client));
    pipe(client, upstream);
    pipe(upstream, client);
  });
  return new Promise(resolve => {
    relay.server.listen(0, '127.0.0.1', () => {
      relay.port = relay.server.address().port;
      resolve(relay);
    });
  });
}

export function parseAddr(addr) {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
}
