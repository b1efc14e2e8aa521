/**
 * A script that is not the API nor a worker (a CLI, a one-off job), for the early-signal tests: once
 * loaded it tells the parent over IPC (`'ready'`) and then keeps running, as a long script would, with
 * no signal handler of its own.
 */
const alive = setInterval(() => {}, 60_000);
process.send?.('ready');
process.on('disconnect', () => clearInterval(alive));
