// Command verify-example is a hospital system's client of the apcv.verify.v1 contract in Go,
// on code generated from protos/ with buf (docs/integration.md "Go"). It verifies one scan,
// reads the details of a call error, and resends a scan with its request_id.
//
//	APCV_TARGET=127.0.0.1:50051 APCV_QR="$QR" ./bin/verify-example
//
// With APCV_TLS_CA, APCV_TLS_CERT and APCV_TLS_KEY (PEM files) it speaks mTLS to the server.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	verifyv1 "apcv.example/apcv-verify/gen/go/apcv/verify/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// serviceConfig lets grpc-go resend a call that failed with UNAVAILABLE, CANCELLED by the
// server (past its capacity it ends the calls it cannot take so) or RESOURCE_EXHAUSTED (too
// many calls in progress), unchanged (so with the same request_id), with exponential backoff;
// nothing else is retried. A MESSAGE_TOO_LARGE refusal, which the same request would meet
// again, carries gRPC's server pushback "do not retry" and is not resent.
const serviceConfig = `{"methodConfig": [{
  "name": [{"service": "apcv.verify.v1.VerifierService", "method": "Verify"}],
  "retryPolicy": {
    "maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "10s", "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED"]
  }
}]}`

func main() {
	transport, err := transportCredentials()
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient(os.Getenv("APCV_TARGET"),
		grpc.WithTransportCredentials(transport),
		grpc.WithDefaultServiceConfig(serviceConfig))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := verifyv1.NewVerifierServiceClient(conn)
	qr := strings.Split(os.Getenv("APCV_QR"), "\n")[0]

	// 1. Verify a scan: a rejected presentation is a verdict, not an error.
	scan := &verifyv1.Scan{
		RequestId:    newRequestID(), // kept for any resend of this scan
		Presentation: &verifyv1.Scan_QrText{QrText: qr},
		Reader:       &verifyv1.ReaderContext{ReaderId: "admissions-desk-3"},
	}
	first, err := verify(client, scan)
	if err != nil {
		log.Fatal(describe(err))
	}
	fmt.Println("verdict:", first.GetDecision(), first.GetReason(), "duplicate:", first.GetDuplicate())

	// 2. A call error: its status, then ErrorInfo.reason to branch on and BadRequest's fields.
	unnamed := &verifyv1.Scan{
		RequestId:    newRequestID(),
		Presentation: &verifyv1.Scan_QrText{QrText: qr},
		Reader:       &verifyv1.ReaderContext{}, // no reader_id
	}
	if _, err := verify(client, unnamed); err != nil {
		fmt.Print(describe(err))
	} else {
		log.Fatal("a scan without reader_id was answered")
	}

	// 3. The answer was lost (a timeout, a crash): resend the same scan, same request_id.
	again, err := verify(client, scan)
	if err != nil {
		log.Fatal(describe(err))
	}
	if again.GetDecision() != first.GetDecision() || again.GetReason() != first.GetReason() {
		log.Fatalf("the resend was answered %v %v, the first send %v %v",
			again.GetDecision(), again.GetReason(), first.GetDecision(), first.GetReason())
	}
	// resent: the server gave back the answer of the first send (answer recovery), which was
	// already counted; do not count (or bill) it twice.
	if !again.GetResent() {
		log.Fatal("the resend was verified again instead of answered from the first send")
	}
	fmt.Println("again:", again.GetDecision(), again.GetReason(), "resent:", again.GetResent())
}

// verify sends one Verify call with a 10 s deadline, retries included.
func verify(client verifyv1.VerifierServiceClient, scan *verifyv1.Scan) (*verifyv1.Verdict, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := client.Verify(ctx, &verifyv1.VerifyRequest{Scan: scan})
	return reply.GetVerdict(), err
}

// transportCredentials is mTLS with this system's client certificate, whose subject CN is
// its entry in the server's [[callers]] table, when APCV_TLS_CA names the server's CA bundle;
// plaintext otherwise (a test server).
func transportCredentials() (credentials.TransportCredentials, error) {
	caFile := os.Getenv("APCV_TLS_CA")
	if caFile == "" {
		return insecure.NewCredentials(), nil
	}
	bundle, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return nil, errors.New("APCV_TLS_CA: no PEM certificate in " + caFile)
	}
	certFile, keyFile := os.Getenv("APCV_TLS_CERT"), os.Getenv("APCV_TLS_KEY")
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		return nil, fmt.Errorf("APCV_TLS_CERT, APCV_TLS_KEY: %w", err)
	}
	return credentials.NewTLS(&tls.Config{
		RootCAs:    roots,
		MinVersion: tls.VersionTLS12,
		// Read at each handshake: a certificate renewed on disk (before it expires, or after
		// its CA revoked the old one) is presented from the next connection on.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			return &pair, err
		},
	}), nil
}

// describe reads a call error's google.rpc.Status details (the v1 contract's error model).
func describe(err error) string {
	st := status.Convert(err)
	text := fmt.Sprintf("error: %v\n", st.Code())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo: // domain "apcv.verify.v1", a stable reason
			text += fmt.Sprintf("reason: %s %s\n", d.GetDomain(), d.GetReason())
		case *errdetails.BadRequest: // INVALID_ARGUMENT: which fields are wrong
			for _, violation := range d.GetFieldViolations() {
				text += fmt.Sprintf("field: %s %s\n", violation.GetField(), violation.GetReason())
			}
		}
	}
	return text
}

// newRequestID is a random id: unique per scan, reused only by a resend of that scan.
func newRequestID() string {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		log.Fatal(err)
	}
	return hex.EncodeToString(id)
}
