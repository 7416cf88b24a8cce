-- The POST of post.lua as a frontend behind an ingress sends it: with X-Forwarded-For
-- (the peer, wrk on loopback, is a trusted proxy by default, so the gateway walks it).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Forwarded-For"] = "203.0.113.7, 10.1.2.3"
wrk.body = '{"username":"player-000042","password":"correct horse battery staple","currency":"EUR","ip_hint":"203.0.113.7","device":"web","locale":"en-GB","campaign":"winter-2026","terms_accepted":true,"ref":"bench"}'
