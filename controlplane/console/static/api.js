// The REST client of the console: same-origin fetch with the session cookie; unsafe
// methods carry the session's CSRF token (X-CSRF-Token). Errors are thrown as ApiError
// with the HTTP status and the server's detail (FastAPI's "detail", the store's "error",
// or a policy lint answer with file/line/field/problems in .body).

export class ApiError extends Error {
  constructor(status, detail, body = null, headers = null) {
    super(typeof detail === 'string' ? detail : JSON.stringify(detail));
    this.name = 'ApiError';
    this.status = status;
    this.detail = detail;
    this.body = body;
    this.headers = headers;
  }
}

function describe(body, status) {
  if (body && typeof body === 'object') {
    if (typeof body.detail === 'string') return body.detail;
    if (Array.isArray(body.detail)) {   // FastAPI validation errors
      return body.detail.map((d) => `${(d.loc || []).join('.')}: ${d.msg}`).join('; ');
    }
    if (typeof body.error === 'string') return body.error;
  }
  return `HTTP ${status}`;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === null || v === undefined || v === '') continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

// createApi({csrf: () => token, onUnauthorized: () => ...})
export function createApi({csrf = () => null, onUnauthorized = () => {}} = {}) {
  async function call(method, path, {params, body} = {}) {
    if (!path.startsWith('/api/')) throw new Error(`not an API path: ${path}`);
    const headers = {Accept: 'application/json'};
    const init = {method, credentials: 'same-origin', headers, cache: 'no-store',
      redirect: 'error'};
    if (method !== 'GET' && method !== 'HEAD') {
      const token = csrf();
      if (token) headers['X-CSRF-Token'] = token;
    }
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path + query(params), init);
    const type = response.headers.get('content-type') || '';
    let data = null;
    if (response.status !== 204) {
      data = type.includes('json') ? await response.json().catch(() => null)
        : await response.text();
    }
    if (!response.ok) {
      if (response.status === 401) onUnauthorized();
      throw new ApiError(response.status, describe(data, response.status), data,
        response.headers);
    }
    return data;
  }
  return {
    get: (path, params) => call('GET', path, {params}),
    send: (method, path, body) => call(method, path, {body}),
    call,
  };
}
