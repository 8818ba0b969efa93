package firmware

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// How StreamImage restarts a stream.
//
// A zstd image built by Encoder is a run of independent frames, each
// holding FrameBytes of raw image (RFC 8878 §3.1: frames are independent;
// a decoder may start at any frame's first byte). StreamImage walks the
// frame and block headers as the bytes pass (it never buffers a frame) and
// stops at each frame boundary: there the stored and raw offsets and the
// state of both SHA-256 hashes are a Position, from which a later call can
// continue with the stored bytes from that offset on. An uncompressed image
// has a boundary every FrameBytes. A gzip stream has none: it restarts from
// the beginning. A zstd image made as one frame (older bundles) decodes
// too, but has no boundary before its end.

// FrameBytes is the raw size of each zstd frame Encoder writes, and the
// distance between restart points of an uncompressed image.
const FrameBytes = 4 << 20 // 4 MiB

const (
	// maxBlockBytes is Block_Maximum_Size (RFC 8878 §3.1.1.2.3).
	maxBlockBytes = 128 << 10 // 128 KiB
	// chunkBytes and chunkCount size the buffers between the decode, hash
	// and write stages: chunkBytes*chunkCount is all the raw image in
	// flight.
	chunkBytes = 128 << 10 // 128 KiB
	chunkCount = 16
	// readBufferBytes is the read-ahead of the stored stream.
	readBufferBytes = 64 << 10 // 64 KiB
)

// ErrTruncated is wrapped by the MismatchError of a stored stream that ends
// before its signed length: the download stopped early. Unlike other
// mismatches it says nothing about the bytes that did arrive, and the rest
// can be fetched again from the last Position.
var ErrTruncated = errors.New("firmware: image stream ends before its signed length")

// A ReadError is a failure of the stored image's source (the network, a
// file): the image is not known to be bad, and the stream can continue from
// the last Position.
type ReadError struct {
	Offset int64 // bytes of the stored image read before the failure
	Err    error
}

func (e *ReadError) Error() string { return fmt.Sprintf("read image at byte %d: %v", e.Offset, e.Err) }
func (e *ReadError) Unwrap() error { return e.Err }

// A Position is a frame boundary of an image stream, where decoding can
// start again.
type Position struct {
	Stored     int64  `json:"stored"`      // bytes of the stored image before the boundary
	Raw        int64  `json:"raw"`         // bytes of the raw image before the boundary
	StoredHash []byte `json:"stored_hash"` // SHA-256 state after Stored bytes (its MarshalBinary form)
	RawHash    []byte `json:"raw_hash"`    // SHA-256 state after Raw bytes
}

// hashes returns the SHA-256 states saved in p; the zero Position gives
// fresh hashes.
func (p Position) hashes() (stored, raw hash.Hash, err error) {
	stored, raw = sha256.New(), sha256.New()
	if p.Stored == 0 && p.Raw == 0 {
		return stored, raw, nil
	}
	if err := stored.(encoding.BinaryUnmarshaler).UnmarshalBinary(p.StoredHash); err != nil {
		return nil, nil, fmt.Errorf("restore stored-image hash at byte %d: %w", p.Stored, err)
	}
	if err := raw.(encoding.BinaryUnmarshaler).UnmarshalBinary(p.RawHash); err != nil {
		return nil, nil, fmt.Errorf("restore raw-image hash at byte %d: %w", p.Raw, err)
	}
	return stored, raw, nil
}

// Check reports whether p can be a boundary of img: offsets inside the
// image and hash states that restore.
func (p Position) Check(img Image) error {
	if p.Stored < 0 || p.Raw < 0 || p.Stored > img.Length || p.Raw > img.RawLength ||
		(p.Stored == img.Length && p.Stored != 0) {
		return fmt.Errorf("position at stored byte %d, raw byte %d is outside the image (%d stored, %d raw bytes)",
			p.Stored, p.Raw, img.Length, img.RawLength)
	}
	_, _, err := p.hashes()
	return err
}

func hashState(h hash.Hash) []byte {
	b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic("firmware: sha256 state does not marshal: " + err.Error())
	}
	return b
}

// StreamOptions say where StreamImage starts and what it does at frame
// boundaries.
type StreamOptions struct {
	// From is where r and w start; nil means at the beginning. It must be
	// a Position this package produced for the same image.
	From *Position
	// AtBoundary, when not nil, is called at each frame boundary before
	// the end of the image, once every raw byte before it has been written
	// to w (written, not synced: syncing is the caller's part). It runs on
	// the goroutine that writes w, which waits for it; an error stops the
	// stream and is returned.
	AtBoundary func(Position) error
}

// StreamImage decodes the stored image read from r and writes the raw image
// to w, checking while it streams that neither form exceeds its signed
// length and at the end that both digests match img. With opts.From, r must
// deliver the stored image from From.Stored and w receive the raw image from
// From.Raw; the digests still cover the whole image. StreamImage reads at
// most img.Length-From.Stored+1 bytes from r whatever r holds.
//
// Decoding, hashing and writing run on three goroutines with a fixed set of
// buffers, so memory does not grow with the image; all have stopped when
// StreamImage returns. r is read only on the calling goroutine.
//
// Errors: a MismatchError (ErrMismatch) when the bytes do not match the
// signed description, also wrapping ErrTruncated when the stream ended
// early; a *ReadError when r failed; a wrapped error when w or AtBoundary
// failed or ctx ended. On any error w has received unverified bytes.
func StreamImage(ctx context.Context, w io.Writer, r io.Reader, img Image, opts StreamOptions) error {
	var from Position
	if opts.From != nil {
		from = *opts.From
	}
	if err := from.Check(img); err != nil {
		return fmt.Errorf("stream image: %w", err)
	}
	storedHash, rawHash, _ := from.hashes()
	src := &source{r: io.LimitReader(r, img.Length-from.Stored+1)}
	sp := &splitter{br: bufio.NewReaderSize(src, readBufferBytes), src: src, c: img.Compression, h: storedHash, n: from.Stored}
	p := startPipeline(w, img, rawHash, from.Raw, opts.AtBoundary)
	decodeErr := p.decode(ctx, sp)
	stageErr := p.wait()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("stream image: %w", ctx.Err())
	case src.err != nil:
		return &ReadError{Offset: sp.n, Err: src.err}
	case stageErr != nil:
		return stageErr
	case decodeErr != nil:
		return sp.explain(img, decodeErr)
	}
	switch {
	case sp.n > img.Length:
		return &MismatchError{What: "stored length", Detail: fmt.Sprintf("more than the signed %d bytes", img.Length)}
	case sp.n < img.Length:
		return &MismatchError{What: "truncated", Detail: fmt.Sprintf("the stream ends after %d bytes, signed %d", sp.n, img.Length)}
	case sum(sp.h) != img.SHA256:
		return &MismatchError{What: "stored sha256", Detail: fmt.Sprintf("got %s, signed %s", sum(sp.h), img.SHA256)}
	case p.rawN < img.RawLength:
		return &MismatchError{What: "raw length", Detail: fmt.Sprintf("%d bytes, signed %d", p.rawN, img.RawLength)}
	case sum(rawHash) != img.RawSHA256:
		return &MismatchError{What: "raw sha256", Detail: fmt.Sprintf("got %s, signed %s", sum(rawHash), img.RawSHA256)}
	}
	return nil
}

// A chunk moves between the stages: raw image bytes, or a frame boundary.
type chunk struct {
	buf []byte    // raw bytes; nil for a boundary
	at  *Position // the boundary: Stored and StoredHash from decode, Raw and RawHash from hash
}

// A pipeline decodes on the caller's goroutine, hashes on a second and
// writes on a third. After the first error every stage only drains its
// input, so wait always returns.
type pipeline struct {
	img        Image
	w          io.Writer
	rawHash    hash.Hash
	rawN       int64 // raw bytes hashed; owned by the hash stage until wait returns
	atBoundary func(Position) error

	free    chan []byte
	decoded chan chunk
	hashed  chan chunk
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu  sync.Mutex
	err error // first error of the hash or write stage; guarded by mu
}

func startPipeline(w io.Writer, img Image, rawHash hash.Hash, rawN int64, atBoundary func(Position) error) *pipeline {
	p := &pipeline{
		img: img, w: w, rawHash: rawHash, rawN: rawN, atBoundary: atBoundary,
		free: make(chan []byte, chunkCount), decoded: make(chan chunk, chunkCount), hashed: make(chan chunk, chunkCount),
		stop: make(chan struct{}),
	}
	for range chunkCount {
		p.free <- make([]byte, chunkBytes)
	}
	p.wg.Add(2)
	go p.hashStage()
	go p.writeStage()
	return p
}

func (p *pipeline) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	p.once.Do(func() { close(p.stop) })
}

// wait closes the decode stage's output and waits for the others.
func (p *pipeline) wait() error {
	close(p.decoded)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// send passes c on unless a later stage failed.
func (p *pipeline) send(c chunk) bool {
	select {
	case p.decoded <- c:
		return true
	case <-p.stop:
		return false
	}
}

// decode runs the decode stage on the caller's goroutine, frame by frame.
// It returns a decoding error, or nil when the stream ended or a later
// stage stopped it.
func (p *pipeline) decode(ctx context.Context, sp *splitter) error {
	var zd *zstd.Decoder
	defer func() {
		if zd != nil {
			zd.Close()
		}
	}()
	for {
		more, err := sp.nextFrame()
		if err != nil || !more {
			return err
		}
		var dec io.Reader = sp
		switch sp.c {
		case CompressionZstd:
			if zd == nil {
				zd, err = zstd.NewReader(nil, zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderConcurrency(1))
				if err != nil {
					return err
				}
			}
			if err := zd.Reset(sp); err != nil {
				return err
			}
			dec = zd
		case CompressionGzip:
			gz, err := gzip.NewReader(sp)
			if err != nil {
				return err
			}
			dec = gz
		}
		if err := p.decodeFrame(ctx, dec); err != nil {
			return err
		}
		if sp.next != atFrameEnd || sp.left != 0 {
			// The decoder stopped before the frame's end (a gzip
			// stream with bytes after it, say).
			if _, err := io.Copy(io.Discard, sp); err != nil {
				return err
			}
		}
		select {
		case <-p.stop:
			return nil
		default:
		}
		// The end of the image is no boundary: nothing follows it.
		if more, err := sp.peekMore(); err != nil || !more {
			return err
		}
		if !p.send(chunk{at: &Position{Stored: sp.n, StoredHash: hashState(sp.h)}}) {
			return nil
		}
	}
}

// decodeFrame passes one frame's raw bytes on in chunks.
func (p *pipeline) decodeFrame(ctx context.Context, dec io.Reader) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var buf []byte
		select {
		case buf = <-p.free:
		case <-p.stop:
			return nil
		}
		// Fill buf; only io.EOF ends the frame (a truncated stream is
		// io.ErrUnexpectedEOF, an error).
		n, err := 0, error(nil)
		for n < len(buf) && err == nil {
			var k int
			k, err = dec.Read(buf[n:])
			n += k
		}
		if n > 0 && !p.send(chunk{buf: buf[:n]}) {
			return nil
		}
		if n == 0 {
			p.free <- buf
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// hashStage hashes the raw bytes and completes boundaries with the raw
// offset and hash state.
func (p *pipeline) hashStage() {
	defer p.wg.Done()
	defer close(p.hashed)
	for c := range p.decoded {
		select {
		case <-p.stop:
			p.recycle(c)
			continue
		default:
		}
		if c.at != nil {
			c.at.Raw, c.at.RawHash = p.rawN, hashState(p.rawHash)
		} else {
			p.rawN += int64(len(c.buf))
			if p.rawN > p.img.RawLength {
				p.fail(&MismatchError{What: "raw length", Detail: fmt.Sprintf("more than the signed %d bytes", p.img.RawLength)})
				p.recycle(c)
				continue
			}
			p.rawHash.Write(c.buf)
		}
		p.hashed <- c
	}
}

// writeStage writes the raw bytes and calls atBoundary at boundaries.
func (p *pipeline) writeStage() {
	defer p.wg.Done()
	for c := range p.hashed {
		select {
		case <-p.stop:
			p.recycle(c)
			continue
		default:
		}
		switch {
		case c.at != nil && p.atBoundary != nil:
			if err := p.atBoundary(*c.at); err != nil {
				p.fail(fmt.Errorf("at stored byte %d: %w", c.at.Stored, err))
			}
		case c.buf != nil:
			if _, err := p.w.Write(c.buf); err != nil {
				p.fail(fmt.Errorf("write image: %w", err))
			}
		}
		p.recycle(c)
	}
}

func (p *pipeline) recycle(c chunk) {
	if c.buf != nil {
		p.free <- c.buf[:cap(c.buf)]
	}
}
