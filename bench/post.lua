-- POST a ~200-byte JSON body, as a player action would.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"username":"player-000042","password":"correct horse battery staple","currency":"EUR","ip_hint":"203.0.113.7","device":"web","locale":"en-GB","campaign":"winter-2026","terms_accepted":true,"ref":"bench"}'
