// The real @neondatabase/serverless driver against the gateway, one scenario per run, configured
// exactly as `sdb dsn NAME --http` and `--ws` print it:
//   FETCH_ENDPOINT=https://127.0.0.1:9443/sql WS_PROXY=127.0.0.1:9443/v2 USE_SECURE_WEBSOCKET=true \
//   DATABASE_URL=postgresql://app:pw@orders.default/app NODE_EXTRA_CA_CERTS=<state>/ca.crt node driver.mjs SCENARIO
// The token scenarios take TOKEN: over HTTP as `authToken` (the driver sends it as Authorization:
// Bearer), over WebSocket as the password (the driver's Pool has no authToken; its default
// pipelineConnect sends the password as soon as the socket is open).
// Prints one JSON document: what the scenario saw. A failure the scenario does not expect exits 1.
import ws from 'ws';
import { neon, neonConfig, Pool, NeonDbError, parseIntoClientConfig } from '@neondatabase/serverless';

const url = process.env.DATABASE_URL;
neonConfig.fetchEndpoint = process.env.FETCH_ENDPOINT;
neonConfig.webSocketConstructor = ws;
neonConfig.useSecureWebSocket = process.env.USE_SECURE_WEBSOCKET === 'true';
neonConfig.wsProxy = process.env.WS_PROXY;
neonConfig.pipelineConnect = false; // Postgres asks for SCRAM; the pipelined cleartext password cannot answer it

const sql = neon(url);

const scenarios = {
  async query() {
    const rows = await sql`SELECT ${41}::int + 1 AS n, ${'hi'}::text AS s, ${true}::bool AS b,
                                  ${null}::text AS nothing, '{1,2}'::int[] AS a, now() AS t`;
    const full = await sql.query('SELECT $1::int AS n', [7], { fullResults: true, arrayMode: true });
    return {
      row: { ...rows[0], t: rows[0].t instanceof Date },
      full: { command: full.command, rowCount: full.rowCount, rows: full.rows, type: full.fields[0].dataTypeID },
    };
  },
  async batch() {
    await sql`CREATE TABLE IF NOT EXISTS batch (id int PRIMARY KEY)`;
    const [a, b, c] = await sql.transaction(
      [sql`INSERT INTO batch VALUES (1), (2) ON CONFLICT DO NOTHING`, sql`SELECT count(*)::int AS n FROM batch`,
       sql`SELECT current_setting('transaction_isolation') AS level`],
      { isolationLevel: 'Serializable' });
    let rolledBack = null;
    try {
      await sql.transaction([sql`INSERT INTO batch VALUES (3)`, sql`SELECT 1 / 0`]);
    } catch (e) {
      rolledBack = { code: e.code, kept: (await sql`SELECT count(*)::int AS n FROM batch WHERE id = 3`)[0].n };
    }
    return { inserted: a, count: b[0].n, level: c[0].level, rolledBack };
  },
  async error() {
    try {
      await sql`SELECT * FROM does_not_exist`;
      return { thrown: false };
    } catch (e) {
      // A request that never got an answer says why (ECONNRESET, a TLS alert...), for the assertion to show.
      const cause = e.sourceError ? { cause: String(e.sourceError.cause?.code ?? e.sourceError.cause) } : {};
      return { thrown: true, neon: e instanceof NeonDbError, code: e.code, message: e.message, position: e.position, ...cause };
    }
  },
  async untrusted() {
    // Run without NODE_EXTRA_CA_CERTS: the gateway's certificate is from a CA Node does not know.
    const seen = {};
    try {
      await sql`SELECT 1`;
      seen.http = 'answered';
    } catch (e) {
      seen.http = e.sourceError?.cause?.code ?? String(e);
    }
    const pool = new Pool({ connectionString: url });
    pool.on('error', () => {});
    try {
      await pool.query('SELECT 1');
      seen.ws = 'answered';
    } catch (e) {
      seen.ws = e.code ?? e.message;
    } finally {
      await pool.end().catch(() => {});
    }
    return seen;
  },
  async pool() {
    const pool = new Pool({ connectionString: url });
    const client = await pool.connect();
    try {
      await client.query('CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name text)');
      await client.query('BEGIN');
      const inserted = await client.query('INSERT INTO items (name) VALUES ($1) RETURNING id', ['widget']);
      const inside = await client.query('SELECT name FROM items WHERE id = $1', [inserted.rows[0].id]);
      await client.query('ROLLBACK');
      const after = await client.query('SELECT count(*)::int AS n FROM items WHERE id = $1', [inserted.rows[0].id]);
      await client.query('BEGIN');
      await client.query('INSERT INTO items (name) VALUES ($1)', ['kept']);
      await client.query('COMMIT');
      const kept = await client.query("SELECT count(*)::int AS n FROM items WHERE name = 'kept'");
      return { inside: inside.rows, afterRollback: after.rows[0].n, committed: kept.rows[0].n > 0 };
    } finally {
      client.release();
      await pool.end();
    }
  },
  async tokenQuery() {
    const authorized = neon(url, { authToken: process.env.TOKEN });
    const rows = await authorized`SELECT current_user AS role, ${41}::int + 1 AS n`;
    // Again, with authToken as a function (resolved per query), on the session the first one left.
    const again = neon(url, { authToken: async () => process.env.TOKEN });
    return { ...rows[0], again: (await again`SELECT current_user AS role`)[0].role };
  },
  async tokenRefused() {
    const authorized = neon(url, { authToken: process.env.TOKEN });
    try {
      await authorized`SELECT 1`;
      return { thrown: false };
    } catch (e) {
      return { thrown: true, neon: e instanceof NeonDbError, code: e.code, message: e.message };
    }
  },
  async tokenPool() {
    neonConfig.pipelineConnect = 'password';
    const pool = new Pool({ ...parseIntoClientConfig(url), password: () => process.env.TOKEN });
    pool.on('error', () => {});
    try {
      const result = await pool.query('SELECT current_user AS role');
      return { role: result.rows[0].role };
    } catch (e) {
      return { code: e.code, message: e.message };
    } finally {
      await pool.end().catch(() => {});
    }
  },
};

const scenario = scenarios[process.argv[2]];
if (!scenario) {
  console.error(`usage: node driver.mjs ${Object.keys(scenarios).join('|')}`);
  process.exit(2);
}
console.log(JSON.stringify(await scenario()));
