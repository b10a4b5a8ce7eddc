// Preloaded with `node -r` so kinesis-local (which binds 0.0.0.0) listens on loopback only.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const loopback = (h) => h === undefined || h === "0.0.0.0" || h === "::" ? "127.0.0.1" : h;
  if (args[0] && typeof args[0] === "object") {
    args[0] = { ...args[0], host: loopback(args[0].host) };
  } else if (typeof args[0] === "number") {
    if (typeof args[1] === "string") args[1] = loopback(args[1]);
    else args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
