// The reference: Aleacc signing in nginx + njs, over the same default field list as the
// gateway (api_id, request_id, timestamp, method, path_and_query, content_type, body).
var crypto = require('crypto');

function authorization(r) {
    var apiId = r.variables.amx_api_id;
    var requestId = r.variables.request_id;            // nginx: 32 random hex characters
    var timestamp = Math.floor(Date.now() / 1000).toString();
    var contentType = r.headersIn['Content-Type'] || '';
    var body = r.requestText || '';
    var message = [apiId, requestId, timestamp, r.method, r.variables.request_uri,
                   contentType, body].join('\n');
    var signature = crypto.createHmac('sha256', r.variables.amx_secret)
        .update(message).digest('base64');
    return 'amx ' + apiId + ':' + signature + ':' + requestId + ':' + timestamp;
}

export default {authorization};
