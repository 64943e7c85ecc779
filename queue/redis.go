package queue

import (
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisOptions say how to reach Redis; config.Redis maps onto them.
type RedisOptions struct {
	Addr     string        // host:port; default 127.0.0.1:6379
	Password string        // AUTH password; "" for none
	DB       int           // SELECT db
	Timeout  time.Duration // connect and per-command timeout; default 3s, at least 2s
	PoolSize int           // connections; default go-redis's (10 per CPU)
}

// NewRedis returns a go-redis client set up for the queue: RESP2, no
// automatic command retries (the queue decides what is safe to retry: an
// enqueue is not, without an idempotency key), and timeouts long enough
// for a consumer's blocking wait (up to 1s).
func NewRedis(o RedisOptions) *redis.Client {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:6379"
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	o.Timeout = max(o.Timeout, 2*time.Second)
	return redis.NewClient(&redis.Options{
		Addr:                     o.Addr,
		Password:                 o.Password,
		DB:                       o.DB,
		Protocol:                 2,
		DialTimeout:              o.Timeout,
		ReadTimeout:              o.Timeout,
		WriteTimeout:             o.Timeout,
		PoolSize:                 o.PoolSize,
		MaxRetries:               -1,
		DialerRetries:            1,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}
