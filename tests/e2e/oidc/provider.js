// A real OpenID Connect provider for aibox's end-to-end tests: the certified
// `oidc-provider` package, configured for the client_credentials grant with
// JWT access tokens (RFC 9068) per resource indicator (RFC 8707).
//
// Usage: node provider.js CONFIG.json
//
// CONFIG.json (written by the test):
//   {
//     "port": 0,                       // 0 picks a free port
//     "keys_file": "/path/jwks.json",  // PRIVATE JWKS; re-read on rotation
//     "resources": {                   // resource indicator -> token shape
//       "urn:aibox": {"audience": "aibox", "alg": "RS256", "ttl": 300}
//     },
//     "default_resource": "urn:aibox", // used when a request names none
//     "clients": [
//       {"client_id": "ci", "client_secret": "...",
//        "auth_method": "client_secret_basic",           // or client_secret_post
//        "claims": {"tenant": "acme", "preferred_username": "ci",
//                   "realm_access": {"roles": ["admin"]}}}
//     ],
//     "users": {                       // optional: accounts for logins
//       "alice": {"tenant": "acme", "preferred_username": "alice",
//                 "realm_access": {"roles": ["admin"]}}
//     }
//   }
//
// A client with "redirect_uris" may also use the authorization code grant
// (PKCE required); the provider's development login form (devInteractions:
// any login name, any password, then "Continue") logs a user in, and the
// user's claims from "users" go into the ID token.
//
// The provider listens on 127.0.0.1 and prints `LISTENING <issuer>` on stdout
// once it answers. Its JWKS endpoint publishes the public part of every key
// in keys_file; tokens are signed with the FIRST key in the file that fits the
// resource's alg (its kid is in the token header).
//
// Key rotation: `POST /_rotate` (or SIGUSR2) re-reads keys_file and swaps in a
// provider built from it, on the same port and issuer. Write the new key first
// and keep the old one after it: the new key signs, both stay published.
// The answer is `{"kids": [...]}`, the published key ids in order.

import fs from 'node:fs';
import http from 'node:http';

import { Provider, errors } from 'oidc-provider';

const configPath = process.argv[2] || process.env.OIDC_CONFIG;
if (!configPath) {
  console.error('usage: node provider.js CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const port = Number(process.env.OIDC_PORT ?? config.port ?? 0);

const KTY_OF_ALG = { RS: 'RSA', PS: 'RSA', ES: 'EC', Ed: 'OKP' };

function loadKeys() {
  const jwks = JSON.parse(fs.readFileSync(config.keys_file, 'utf8'));
  if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    throw new Error(`${config.keys_file} holds no keys`);
  }
  return jwks;
}

// The kid of the first key that can sign `alg`.
function signingKid(jwks, alg) {
  const kty = KTY_OF_ALG[alg.slice(0, 2)];
  const key = jwks.keys.find((k) => k.kty === kty && (!k.alg || k.alg === alg));
  if (!key) throw new Error(`no key in ${config.keys_file} can sign ${alg}`);
  return key.kid;
}

const claimsByClient = new Map(
  config.clients.map((c) => [c.client_id, c.claims || {}]),
);

const users = config.users || {};
const interactive = config.clients.some((c) => (c.redirect_uris || []).length > 0);
const userClaimNames = [...new Set(Object.values(users).flatMap((u) => Object.keys(u)))];

function build(issuer) {
  const jwks = loadKeys();
  const resources = config.resources || {};
  const provider = new Provider(issuer, {
    jwks,
    clients: config.clients.map((c) => {
      const login = (c.redirect_uris || []).length > 0;
      return {
        client_id: c.client_id,
        client_secret: c.client_secret,
        grant_types: login ? ['authorization_code', 'client_credentials'] : ['client_credentials'],
        response_types: login ? ['code'] : [],
        redirect_uris: c.redirect_uris || [],
        token_endpoint_auth_method: c.auth_method || 'client_secret_basic',
      };
    }),
    findAccount: (_ctx, id) => ({
      accountId: id,
      claims: () => ({ sub: id, ...(users[id] || {}) }),
    }),
    claims: { openid: ['sub', ...userClaimNames] },
    // The user's claims go into the ID token itself, the way Keycloak does
    // by default, because that is what the dashboard's login reads.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    cookies: { keys: ['e2e-cookie-key-not-a-secret-0123456789'] },
    ttl: {
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL || 300,
    },
    features: {
      devInteractions: { enabled: interactive },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => config.default_resource || Object.keys(resources)[0],
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => {
          const r = resources[resource];
          if (!r) throw new errors.InvalidTarget(`unknown resource ${resource}`);
          const alg = r.alg || 'RS256';
          return {
            scope: r.scope || 'api',
            audience: r.audience,
            accessTokenFormat: 'jwt',
            accessTokenTTL: r.ttl || 300,
            jwt: { sign: { alg, kid: signingKid(jwks, alg) } },
          };
        },
      },
    },
    extraTokenClaims: (_ctx, token) => claimsByClient.get(token.clientId) || {},
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  return { provider, handler: provider.callback(), kids: jwks.keys.map((k) => k.kid) };
}

let current = null;
let issuer = null;

function rotate() {
  current = build(issuer);
  console.error(`rotated: kids ${current.kids.join(',')}`);
  return current.kids;
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/_rotate') {
    try {
      const kids = rotate();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kids }));
    } catch (e) {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: String(e) }));
    }
    return;
  }
  if (!current) {
    res.writeHead(503);
    res.end();
    return;
  }
  current.handler(req, res);
});

process.on('SIGUSR2', () => {
  try {
    rotate();
  } catch (e) {
    console.error('rotation failed', e);
  }
});
process.on('SIGTERM', () => process.exit(0));

server.listen(port, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  current = build(issuer);
  console.log(`LISTENING ${issuer}`);
});
