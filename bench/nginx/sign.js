// The reference: Aleacc signing in nginx + njs, over the same default scheme as the
// gateway: api_id, request_id, timestamp, [X-Player-Session-Id], X-Client-Ip (the peer,
// as the proxy sets it), path and query, body; joined by "\n"; the hex-decoded secret
// as the HMAC key; the signature in base64.
var crypto = require('crypto');

function authorization(r) {
    var apiId = r.variables.amx_api_id;
    var requestId = r.variables.request_id;            // nginx: 32 random hex characters
    var timestamp = Math.floor(Date.now() / 1000).toString();
    var fields = [apiId, requestId, timestamp];
    var session = r.headersIn['X-Player-Session-Id'];
    if (session) {
        fields.push(session);                          // optional: left out when absent
    }
    fields.push(r.variables.remote_addr, r.variables.request_uri, r.requestText || '');
    var signature = crypto.createHmac('sha256', Buffer.from(r.variables.amx_secret, 'hex'))
        .update(fields.join('\n')).digest('base64');
    return 'amx ' + apiId + ':' + signature + ':' + requestId + ':' + timestamp;
}

export default {authorization};
