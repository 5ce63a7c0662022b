/** See mesh/net.ts: the one implementation, shared with the scripts and the gateway. */
export { freePort } from '../net.js';
