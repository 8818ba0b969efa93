package firmware

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
)

// The frame walker: it finds the frame boundaries of a stored image as the
// bytes pass on their way to the decoder (see the comment at the top of
// stream.go).

// A source remembers the first error of the stored image's reader other
// than io.EOF.
type source struct {
	r   io.Reader
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// The parts of a zstd frame the splitter walks through (RFC 8878 §3.1.1).
type section int

const (
	inBlockHeader section = iota // a Block_Header comes next
	inChecksum                   // the Content_Checksum comes next
	atFrameEnd                   // the frame is over
	toSourceEnd                  // the frame runs to the end of the stream (gzip, and none's last frame)
)

// A splitter passes the stored stream to the decoder one frame at a time,
// hashing and counting it: Read returns io.EOF at the end of each frame and
// nextFrame starts the next. It holds no more than its read buffer.
type splitter struct {
	br       *bufio.Reader
	src      *source
	c        Compression
	h        hash.Hash
	n        int64   // stored bytes passed on, from the image's first byte
	left     int64   // bytes of the current section still to pass on
	next     section // what follows the current section
	checksum bool    // the current zstd frame ends with a checksum
	short    bool    // the stream ended inside a frame
}

// nextFrame starts the next frame; more is false at the clean end of the
// stream.
func (s *splitter) nextFrame() (more bool, err error) {
	if _, err := s.br.Peek(1); err == io.EOF {
		return false, nil
	} else if err != nil {
		return false, err
	}
	switch s.c {
	case CompressionNone:
		s.left, s.next = FrameBytes, atFrameEnd
	case CompressionGzip:
		s.left, s.next = math.MaxInt64, toSourceEnd
	case CompressionZstd:
		return true, s.zstdFrameHeader()
	default:
		return false, fmt.Errorf("unknown compression %q", s.c)
	}
	return true, nil
}

// peek returns the next n bytes without passing them on; the stream ending
// first is io.ErrUnexpectedEOF.
func (s *splitter) peek(n int) ([]byte, error) {
	b, err := s.br.Peek(n)
	if err == io.EOF {
		s.short, err = true, io.ErrUnexpectedEOF
	}
	return b, err
}

const (
	zstdMagic          = 0xFD2FB528
	zstdSkippableMagic = 0x184D2A50 // low 4 bits are free
)

// zstdFrameHeader reads the header of the frame that starts here (RFC 8878
// §3.1.1.1, and §3.1.2 for skippable frames).
func (s *splitter) zstdFrameHeader() error {
	b, err := s.peek(4)
	if err != nil {
		return err
	}
	switch magic := binary.LittleEndian.Uint32(b); {
	case magic == zstdMagic:
		if b, err = s.peek(5); err != nil {
			return err
		}
		fhd := b[4]
		if fhd&0x08 != 0 {
			return fmt.Errorf("zstd frame at byte %d sets the reserved header bit", s.n)
		}
		single := fhd&0x20 != 0
		size := 5 + [4]int{0, 1, 2, 4}[fhd&3] // Dictionary_ID
		if !single {
			size++ // Window_Descriptor
		}
		fcs := [4]int{0, 2, 4, 8}[fhd>>6]
		if fcs == 0 && single {
			fcs = 1
		}
		size += fcs
		if _, err := s.peek(size); err != nil {
			return err
		}
		s.left, s.next, s.checksum = int64(size), inBlockHeader, fhd&0x04 != 0
	case magic&0xFFFFFFF0 == zstdSkippableMagic:
		if b, err = s.peek(8); err != nil {
			return err
		}
		s.left, s.next = 8+int64(binary.LittleEndian.Uint32(b[4:])), atFrameEnd
	default:
		return fmt.Errorf("bytes %x at %d are not the start of a zstd frame", b, s.n)
	}
	return nil
}

// advance moves to the next section of the frame; io.EOF means the frame
// is over.
func (s *splitter) advance() error {
	switch s.next {
	case inBlockHeader:
		b, err := s.peek(3)
		if err != nil {
			return err
		}
		h := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
		last, typ, size := h&1 == 1, (h>>1)&3, int64(h>>3)
		if size > maxBlockBytes {
			return fmt.Errorf("zstd block at byte %d is %d bytes, more than the %d allowed", s.n, size, maxBlockBytes)
		}
		switch typ {
		case 1: // RLE_Block: one byte, repeated
			size = 1
		case 3:
			return fmt.Errorf("zstd block at byte %d has the reserved type", s.n)
		}
		s.left = 3 + size
		switch {
		case !last:
			s.next = inBlockHeader
		case s.checksum:
			s.next = inChecksum
		default:
			s.next = atFrameEnd
		}
		return nil
	case inChecksum:
		s.left, s.next = 4, atFrameEnd
		return nil
	}
	return io.EOF
}

func (s *splitter) Read(p []byte) (int, error) {
	for s.left == 0 {
		if err := s.advance(); err != nil {
			return 0, err
		}
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.br.Read(p)
	s.h.Write(p[:n])
	s.n += int64(n)
	s.left -= int64(n)
	if err == io.EOF {
		if s.next == toSourceEnd || s.c == CompressionNone {
			s.left, s.next = 0, atFrameEnd
		} else {
			s.short, err = true, io.ErrUnexpectedEOF
		}
	}
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

// explain tells why a stream stopped decoding: it reads the rest (never past
// the signed length) and names the cause it can prove, else decodeErr.
func (s *splitter) explain(img Image, decodeErr error) error {
	n, _ := io.Copy(s.h, s.br)
	s.n += n
	switch {
	case s.src.err != nil:
		return &ReadError{Offset: s.n, Err: s.src.err}
	case s.n > img.Length:
		return &MismatchError{What: "stored length", Detail: fmt.Sprintf("more than the signed %d bytes", img.Length)}
	case s.n < img.Length && (s.short || errors.Is(decodeErr, io.ErrUnexpectedEOF)):
		// What arrived decoded up to where it stopped.
		return &MismatchError{What: "truncated", Detail: fmt.Sprintf("the stream ends after %d bytes, signed %d", s.n, img.Length)}
	case s.n != img.Length || sum(s.h) != img.SHA256:
		// A stream that does not decode is most often one that was
		// altered: its digest differing from the signed one says so.
		return &MismatchError{What: "stored sha256", Detail: fmt.Sprintf("the image does not decode (%v) and its digest %s (%d bytes) differs from the signed %s (%d bytes); it was altered or corrupted in transit",
			decodeErr, sum(s.h), s.n, img.SHA256, img.Length)}
	}
	return &MismatchError{What: "decode", Detail: decodeErr.Error()}
}

// peekMore reports whether stored bytes follow the current frame.
func (s *splitter) peekMore() (bool, error) {
	if _, err := s.br.Peek(1); err == io.EOF {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return true, nil
}
