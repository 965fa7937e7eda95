// Drives the gateway with the official, unmodified OpenWhisk JavaScript client.
// Usage: node client.js '{"apihost": "http://127.0.0.1:PORT", "api_key": "uuid:key"}'
// Prints one JSON object with what each call returned (or the error it raised).
const openwhisk = require('openwhisk');

async function attempt(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    return { ok: false, message: err.message, statusCode: err.statusCode };
  }
}

async function main() {
  const config = JSON.parse(process.argv[2]);
  const ow = openwhisk({ apihost: config.apihost, api_key: config.api_key });
  const action = { exec: { kind: 'llm', model: 'tiny' }, parameters: [{ key: 'max_tokens', value: 3 }] };
  const out = {};
  out.create = await attempt(() => ow.actions.create({ name: 'js-hello', action }));
  out.createAgain = await attempt(() => ow.actions.create({ name: 'js-hello', action }));
  out.update = await attempt(() => ow.actions.update({ name: 'js-hello', action }));
  out.list = await attempt(() => ow.actions.list());
  out.get = await attempt(() => ow.actions.get({ name: 'js-hello' }));
  out.invokeBlocking = await attempt(() => ow.actions.invoke({ name: 'js-hello', params: { prompt: 'from js' }, blocking: true }));
  out.invokeResult = await attempt(() => ow.actions.invoke({ name: 'js-hello', params: { prompt: 'from js' }, blocking: true, result: true }));
  out.invokeAsync = await attempt(() => ow.actions.invoke({ name: 'js-hello', params: { prompt: 'async' } }));
  if (out.invokeBlocking.ok) {
    const id = out.invokeBlocking.value.activationId;
    out.activation = await attempt(() => ow.activations.get({ name: id }));
    out.result = await attempt(() => ow.activations.result({ name: id }));
    out.logs = await attempt(() => ow.activations.logs({ name: id }));
  }
  out.activations = await attempt(() => ow.activations.list({ limit: 5 }));
  out.namespaces = await attempt(() => ow.namespaces.list());
  out.delete = await attempt(() => ow.actions.delete({ name: 'js-hello' }));
  out.getDeleted = await attempt(() => ow.actions.get({ name: 'js-hello' }));
  const bad = openwhisk({ apihost: config.apihost, api_key: config.api_key.split(':')[0] + ':wrong' });
  out.badKey = await attempt(() => bad.actions.list());
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
