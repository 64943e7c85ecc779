package broker

// deque is a ring buffer of requests: FIFO at the back, re-dispatched
// requests go to the front.
type deque struct {
	buf        []*request
	head, size int
}

func (d *deque) len() int { return d.size }

func (d *deque) grow() {
	if d.size < len(d.buf) {
		return
	}
	nb := make([]*request, max(16, 2*len(d.buf)))
	for i := range d.size {
		nb[i] = d.buf[(d.head+i)%len(d.buf)]
	}
	d.buf, d.head = nb, 0
}

func (d *deque) pushBack(r *request) {
	d.grow()
	d.buf[(d.head+d.size)%len(d.buf)] = r
	d.size++
}

func (d *deque) pushFront(r *request) {
	d.grow()
	d.head = (d.head - 1 + len(d.buf)) % len(d.buf)
	d.buf[d.head] = r
	d.size++
}

func (d *deque) popFront() *request {
	r := d.buf[d.head]
	d.buf[d.head] = nil
	d.head = (d.head + 1) % len(d.buf)
	d.size--
	return r
}

// filter keeps, in order, the requests for which keep returns true.
func (d *deque) filter(keep func(*request) bool) {
	n := d.size
	for range n {
		r := d.popFront()
		if keep(r) {
			d.pushBack(r)
		}
	}
}
