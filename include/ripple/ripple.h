/* ripple.h -- the whole public API of the runtime in one include, for a
 * module built against the installed library (docs/writing-a-service.md):
 * every <ripple/...> header but modules.h, which belongs to
 * libripple-modules. Each header also compiles alone. */
#ifndef RIPPLE_RIPPLE_H
#define RIPPLE_RIPPLE_H

#include <ripple/auth.h>
#include <ripple/clock.h>
#include <ripple/common.h>
#include <ripple/config.h>
#include <ripple/host.h>
#include <ripple/http_client.h>
#include <ripple/http_reply.h>
#include <ripple/http_router.h>
#include <ripple/http_server.h>
#include <ripple/ids.h>
#include <ripple/json_out.h>
#include <ripple/log.h>
#include <ripple/metrics.h>
#include <ripple/module.h>
#include <ripple/openapi.h>
#include <ripple/outbox.h>
#include <ripple/redis.h>
#include <ripple/service.h>
#include <ripple/store.h>
#include <ripple/stream_consumer.h>
#include <ripple/streams.h>
#include <ripple/trace.h>

#endif
