// Command floor is the agent's dependency floor: the smallest program that
// links what any agent of this design must link (the paho MQTT client,
// go-tuf v2's updater, klauspost's zstd decoder and net/http). The size
// benchmark in agent/cmd/aftercare-agent compares the agent binary with
// it, so a dependency bump shows as a bigger floor and the agent's own
// weight as the difference. It is never shipped.
//
//	floor idle                       block, for the idle-RSS baseline
//	floor run BROKER TUF-URL ROOT    use every dependency once
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/klauspost/compress/zstd"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 1 && args[0] == "idle" {
		fmt.Println("ready")
		select {}
	}
	if len(args) != 4 || args[0] != "run" {
		return fmt.Errorf("usage: floor idle | floor run BROKER TUF-URL ROOT")
	}
	client := paho.NewClient(paho.NewClientOptions().AddBroker(args[1]).SetClientID("floor"))
	if t := client.Connect(); t.WaitTimeout(10*time.Second) && t.Error() != nil {
		return t.Error()
	}
	client.Subscribe("floor/hint", 1, func(paho.Client, paho.Message) {}).Wait()
	client.Publish("floor/state", 1, false, []byte("{}")).Wait()
	defer client.Disconnect(100)

	root, err := os.ReadFile(args[3])
	if err != nil {
		return err
	}
	cfg, err := config.New(args[2]+"/metadata", root)
	if err != nil {
		return err
	}
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = os.TempDir(), os.TempDir()
	up, err := updater.New(cfg)
	if err != nil {
		return err
	}
	if err := up.Refresh(); err != nil {
		return err
	}
	tf, err := up.GetTargetInfo("image")
	if err != nil {
		return err
	}
	res, err := (&http.Client{Timeout: time.Minute}).Get(args[2] + "/targets/" + tf.Path)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	dec, err := zstd.NewReader(res.Body)
	if err != nil {
		return err
	}
	defer dec.Close()
	_, err = io.Copy(io.Discard, dec)
	return err
}
