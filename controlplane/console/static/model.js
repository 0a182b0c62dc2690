// Shapes of the API's answers the pages share.

const ROW_KEYS = ['seq', 'id', 'agent_id', 'tenant', 'type', 'time_ms', 'received_at'];

// An event as the pages read it: the stored row's fields and the agent's payload at the
// top level. Servers that answer `{seq, ..., event: payload}` (before the data endpoints
// spread the payload) are read the same as those that spread it.
export function normalizeEvent(e) {
  if (!e || typeof e !== 'object') return e;
  const inner = e.event;
  const wrapped = inner && typeof inner === 'object' && !Array.isArray(inner)
    && e.rule === undefined && e.container === undefined && e.node === undefined
    && (inner.type === undefined || inner.type === e.type);
  if (!wrapped) return e;
  const out = {...inner};
  for (const key of ROW_KEYS) if (e[key] !== undefined) out[key] = e[key];
  if (inner.time_ms !== undefined && e.time_ms === undefined) out.time_ms = inner.time_ms;
  return out;
}
